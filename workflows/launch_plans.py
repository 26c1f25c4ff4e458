"""Launch plans: the nightly re-embedding and the hourly slot compaction schedules.

pyflyte --pkgs workflows package --image <image> -o flyte-package.tgz --force
"""

from __future__ import annotations

from flytekit import CronSchedule, LaunchPlan

from ebr.config import BuildConfig, DataConfig, ReembedConfig
from workflows.platform import build_platform, reembed
from workflows.streaming import compact_slots

# 02:00 UTC nightly: re-embed the catalog with the model version of the live release when the
# run starts (version ""), so new jobs are searchable once promoted; the new slot becomes a
# gated candidate release (release "candidate"): the schedule never moves the live release by
# itself.
nightly_reembed = LaunchPlan.get_or_create(
    workflow=reembed,
    name="ebr.nightly_reembed",
    schedule=CronSchedule(schedule="0 2 * * *"),
    # Production logs end now: the member-interest history uses every engagement.
    default_inputs={
        "config": ReembedConfig(
            workspace="/data/ebr",
            version="",
            history_holdout_days=0,
            release="candidate",
        )
    },
)

# On-demand full rebuild (new model version), launched from the console or pyflyte.
full_build = LaunchPlan.get_or_create(
    workflow=build_platform,
    name="ebr.build_platform",
    default_inputs={"config": BuildConfig(workspace="/data/ebr", data=DataConfig(n_jobs=100_000))},
)

# Hourly: fold the slot log of each serving release (written by the streaming job) into a new
# snapshot, gated as a release that replaces it, so logs stay short and searches merge a small
# delta. A refused compaction leaves the old release serving; the next run tries again.
hourly_compaction = LaunchPlan.get_or_create(
    workflow=compact_slots,
    name="ebr.compact_slots",
    schedule=CronSchedule(schedule="15 * * * *"),
    default_inputs={"workspace": "/data/ebr", "min_records": 1000},
)
