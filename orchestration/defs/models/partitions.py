"""Model partitions: pre-trained models per pre-training size; fine-tuned models (and everything
evaluated on them) per size plus FT-only, the model fine-tuned without pre-training."""

import dagster as dg

from orchestration.defs.common import FT_ONLY
from orchestration.profile import Profile


def variant_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([*profile.sizes, FT_ONLY])


def pretrained_of_variant(profile: Profile) -> dg.StaticPartitionMapping:
    """A fine-tuned variant starts from the pre-trained model of its size; FT-only from none."""
    return dg.StaticPartitionMapping({size: size for size in profile.sizes})
