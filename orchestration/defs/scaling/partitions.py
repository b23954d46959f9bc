"""Pre-training sizes as static partitions, from the profile (paper: 1k/10k/100k/1m; demo: small ones)."""

import dagster as dg

from orchestration.profile import Profile


def size_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(profile.sizes)
