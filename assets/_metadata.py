"""Metadata helpers shared by the asset modules."""
import dagster as dg
import pandas as pd


def markdown_table(frame: pd.DataFrame, index: bool = False) -> dg.MetadataValue:
    """A table as Markdown metadata, which the Dagster UI renders."""
    return dg.MetadataValue.md(frame.to_markdown(index=index))
