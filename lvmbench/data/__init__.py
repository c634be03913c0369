"""Datasets: their semantics and registry (:mod:`.datasets`) and the remote files some of
them download and verify (:mod:`.remote`)."""

from lvmbench.data.datasets import (
                                    BINARIZE,
                                    DATA_KINDS,
                                    DATASETS,
                                    GMM2D_COVARIANCES,
                                    GMM2D_MEANS,
                                    GMM2D_WEIGHTS,
                                    IMAGE_SHAPE,
                                    Dataset,
                                    DatasetSpec,
                                    binarize,
                                    data_dir_from,
                                    gaussian_toy_mean,
                                    gmm2d_distribution,
                                    load_dataset,
)
from lvmbench.data.remote import CHECKSUMS, DatasetError

__all__ = ["BINARIZE", "CHECKSUMS", "DATA_KINDS", "DATASETS", "GMM2D_COVARIANCES", "GMM2D_MEANS", "GMM2D_WEIGHTS", "IMAGE_SHAPE", "Dataset",
           "DatasetError", "DatasetSpec", "binarize", "data_dir_from", "gaussian_toy_mean", "gmm2d_distribution",
           "load_dataset"]
