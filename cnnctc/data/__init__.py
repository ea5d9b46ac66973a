"""Datasets in the field's LMDB format (Baek et al.'s create_lmdb_dataset.py, the model zoo's too).

An LMDB environment holds ``num-samples`` and, 1-based, ``image-%09d`` (encoded image bytes) and
``label-%09d`` (UTF-8 text). :mod:`.dataset` reads them (the official label filter, the shared
preprocessing, damage reported in one line, never a crash); :mod:`.writer` builds them
(``make-lmdb``: streaming, atomic, never replacing what it did not make).
"""
from .dataset import LabelFilter, LmdbDataset
from .writer import MakeLmdbStats, make_lmdb, read_labels_file, write_lmdb

__all__ = ["write_lmdb", "make_lmdb", "read_labels_file", "LmdbDataset", "LabelFilter", "MakeLmdbStats"]
