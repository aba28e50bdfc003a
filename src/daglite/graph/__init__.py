"""The DAG as data: ``GraphMetadata`` and the graph builder."""

from daglite.graph.base import Graph, GraphMetadata
from daglite.graph.builder import build_graph

__all__ = ["Graph", "GraphMetadata", "build_graph"]
