"""The names qgnn knows, as plain data: for ``qgnn --help`` and ``qgnn info``, which must not import torch.

The registries that own these names (:mod:`qgnn.data.registry`, :mod:`qgnn.models`, :mod:`qgnn.methods`,
:mod:`qgnn.train.rec`) import torch and PyG (2-4 s); this copy keeps help and info under a second.
``tests/cli/test_cli_rough_edges.py`` checks that it equals the registries, so a name added there and
forgotten here fails a test rather than going missing from the help.
"""

from __future__ import annotations

DATASETS: dict[str, tuple[str, ...]] = {
    "node": ("amazon-computers", "amazon-photo", "citeseer", "coauthor-cs", "coauthor-physics", "cora", "flickr",
             "ogbn-arxiv", "ogbn-products", "pubmed", "reddit", "sbm-100k", "sbm-1m", "synthetic-node"),
    "graph": ("enzymes", "esol", "freesolv", "imdb-binary", "imdb-multi", "lipo", "mutag", "nci1", "proteins",
              "ptc_mr", "reddit-binary", "synthetic-graph", "zinc"),
    "rec": ("gowalla", "lastfm", "ml-100k", "ml-1m-lightgcnpp", "synthetic-rec"),
}
MODELS: dict[str, tuple[str, ...]] = {"node": ("gat", "gcn", "gin", "graphconv", "sage"), "graph": ("gcn", "gin"),
                                      "rec": ("lightgcn",)}
METHODS: tuple[str, ...] = ("fp32", "a2q", "dq", "lsq", "mixq", "qat")  # qgnn.methods.method_names()
REC_METHODS: tuple[str, ...] = ("bigear", "fp32", "gnaq", "lsq", "qat")
PROMPTS: tuple[str, ...] = ("none", "gpf", "gpf-plus", "lorap", "gpf-lorap")
