from __future__ import annotations

import pytest

from qgnn.data import canonical_name, dataset_names, load_dataset
from qgnn.errors import ConfigError, UnknownNameError
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)

REAL = {"cora", "citeseer", "pubmed", "proteins", "mutag", "nci1", "imdb-binary", "imdb-multi",
        "reddit-binary", "enzymes", "ptc_mr", "gowalla", "lastfm", "ml-1m-lightgcnpp", "ml-100k"}
LARGE = {"reddit", "flickr", "amazon-computers", "amazon-photo", "coauthor-cs", "coauthor-physics", "ogbn-arxiv",
         "ogbn-products"}
MOLECULES = {"esol", "freesolv", "lipo", "zinc"}  # graph regression (qgnn.data.molecules)


def test_dataset_names():
    assert set(dataset_names()) == REAL | LARGE | MOLECULES | {"sbm-100k", "sbm-1m", "synthetic-node",
                                                              "synthetic-graph", "synthetic-rec"}
    assert dataset_names("node") == ["amazon-computers", "amazon-photo", "citeseer", "coauthor-cs", "coauthor-physics",
                                     "cora", "flickr", "ogbn-arxiv", "ogbn-products", "pubmed", "reddit", "sbm-100k",
                                     "sbm-1m", "synthetic-node"]
    assert set(dataset_names("rec")) == {"gowalla", "lastfm", "ml-1m-lightgcnpp", "ml-100k", "synthetic-rec"}
    assert len(dataset_names("graph")) == 9 + len(MOLECULES)
    with pytest.raises(ConfigError):
        dataset_names("edge")


@pytest.mark.parametrize("name, canonical", [
    ("CORA", "cora"), ("PTC-MR", "ptc_mr"), ("ml-1m", "ml-1m-lightgcnpp"), ("IMDB_BINARY", "imdb-binary"),
])
def test_canonical_names(name, canonical):
    assert canonical_name(name) == canonical


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        load_dataset("cora2")
    msg = str(e.value)
    assert "cora2" in msg and "cora" in e.value.valid and "gowalla" in msg and "mutag" in msg


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="normalize_features"):
        load_dataset("cora", seeds=3)


def test_synthetic_through_registry():
    ds = load_dataset("synthetic-node", num_nodes=40, seed=2)
    assert ds.task == "node" and ds.data.num_nodes == 40
    assert load_dataset("Synthetic-Graph", num_graphs=10).task == "graph"
    assert load_dataset("synthetic-rec", root="/nonexistent").task == "rec"
