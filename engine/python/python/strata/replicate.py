"""Mooncake's ``ReplicateConfig``, accepted by the put calls for source compatibility.

Strata places replicas by rendezvous hashing with the client's replica count (``STRATA_REPLICA_NUM``,
default 1), so a per-call config changes nothing; its fields are kept so that code setting them runs.
"""


class ReplicateConfig:
    def __init__(self, replica_num=1, with_soft_pin=False, preferred_segment=""):
        self.replica_num = replica_num
        self.with_soft_pin = with_soft_pin
        self.preferred_segment = preferred_segment
        self.preferred_segments = []
        self.group_ids = None

    def __repr__(self):
        return f"ReplicateConfig(replica_num={self.replica_num})"
