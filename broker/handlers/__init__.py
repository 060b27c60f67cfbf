"""Request handlers, one module per API group, and the table the server dispatches with.

A handler is `handler(ctx, request) -> response | None | Deferred` (see `reply.py`): it runs in the
connection's reader, in arrival order, and raises `BrokerError` for a request-level failure (the
server answers with an error response). Per-topic and per-partition failures are part of the
response instead. The handshake is the server's own business (server.py), not a handler's.

The handlers whose answers name broker addresses (`LISTENER_HANDLERS`: Metadata, FindCoordinator,
ClusterStatus) take a third argument, the name of the listener the request arrived on, and answer
with that listener's advertised addresses (docs/security.md, "Advertised listeners");
`handlers_for(listener)` is the table of one listener's connections.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Final

from broker.handlers.admin import (
    handle_cluster_status,
    handle_create_topics,
    handle_delete_topics,
    handle_describe_topics,
    handle_metadata,
)
from broker.handlers.cluster import (
    handle_broker_heartbeat,
    handle_broker_registration,
    handle_leader_report,
)
from broker.handlers.configs import handle_alter_topic_configs
from broker.handlers.context import BrokerContext, NullMetrics, PartitionState
from broker.handlers.fetch import handle_fetch, handle_list_offsets
from broker.handlers.groups import (
    handle_delete_groups,
    handle_describe_groups,
    handle_find_coordinator,
    handle_heartbeat,
    handle_join_group,
    handle_leave_group,
    handle_list_groups,
    handle_offset_commit,
    handle_offset_fetch,
    handle_sync_group,
    handle_txn_offset_commit,
)
from broker.handlers.membership import handle_decommission_broker
from broker.handlers.partitions_admin import handle_create_partitions, handle_delete_records
from broker.handlers.produce import handle_produce
from broker.handlers.reassignment import (
    handle_alter_partition_reassignments,
    handle_list_partition_reassignments,
    handle_reassignment_completed,
    handle_rebalance,
)
from broker.handlers.reply import Deferred
from broker.handlers.security import (
    handle_alter_client_quotas,
    handle_create_acls,
    handle_delete_acls,
    handle_describe_acls,
    handle_describe_client_quotas,
)
from broker.handlers.share import (
    handle_alter_group_configs,
    handle_describe_share_groups,
    handle_share_acknowledge,
    handle_share_fetch,
)
from broker.handlers.transactions import (
    handle_add_offsets_to_txn,
    handle_add_partitions_to_txn,
    handle_describe_transactions,
    handle_end_txn,
    handle_init_producer_id,
    handle_list_transactions,
    handle_write_txn_markers,
)
from broker.handlers.users import (
    handle_alter_user_scram_credentials,
    handle_describe_user_scram_credentials,
)
from wire import codec

Handler = Callable[[BrokerContext, Any], Any]
ListenerHandler = Callable[[BrokerContext, Any, str], Any]

LISTENER_HANDLERS: Final[dict[type[Any], ListenerHandler]] = {
    codec.MetadataRequest: handle_metadata,
    codec.FindCoordinatorRequest: handle_find_coordinator,
    codec.ClusterStatusRequest: handle_cluster_status,
}

HANDLERS: Final[dict[type[Any], Handler]] = {
    codec.CreateTopicsRequest: handle_create_topics,
    codec.DeleteTopicsRequest: handle_delete_topics,
    codec.DescribeTopicsRequest: handle_describe_topics,
    codec.AlterTopicConfigsRequest: handle_alter_topic_configs,
    codec.CreatePartitionsRequest: handle_create_partitions,
    codec.DeleteRecordsRequest: handle_delete_records,
    codec.ProduceRequest: handle_produce,
    codec.FetchRequest: handle_fetch,
    codec.ListOffsetsRequest: handle_list_offsets,
    codec.JoinGroupRequest: handle_join_group,
    codec.SyncGroupRequest: handle_sync_group,
    codec.HeartbeatRequest: handle_heartbeat,
    codec.LeaveGroupRequest: handle_leave_group,
    codec.OffsetCommitRequest: handle_offset_commit,
    codec.OffsetFetchRequest: handle_offset_fetch,
    codec.ListGroupsRequest: handle_list_groups,
    codec.DescribeGroupsRequest: handle_describe_groups,
    codec.DeleteGroupsRequest: handle_delete_groups,
    codec.BrokerRegistrationRequest: handle_broker_registration,
    codec.BrokerHeartbeatRequest: handle_broker_heartbeat,
    codec.LeaderReportRequest: handle_leader_report,
    codec.DecommissionBrokerRequest: handle_decommission_broker,
    codec.InitProducerIdRequest: handle_init_producer_id,
    codec.WriteTxnMarkersRequest: handle_write_txn_markers,
    codec.AddPartitionsToTxnRequest: handle_add_partitions_to_txn,
    codec.AddOffsetsToTxnRequest: handle_add_offsets_to_txn,
    codec.EndTxnRequest: handle_end_txn,
    codec.ListTransactionsRequest: handle_list_transactions,
    codec.DescribeTransactionsRequest: handle_describe_transactions,
    codec.TxnOffsetCommitRequest: handle_txn_offset_commit,
    codec.ShareFetchRequest: handle_share_fetch,
    codec.ShareAcknowledgeRequest: handle_share_acknowledge,
    codec.AlterGroupConfigsRequest: handle_alter_group_configs,
    codec.DescribeShareGroupsRequest: handle_describe_share_groups,
    codec.AlterPartitionReassignmentsRequest: handle_alter_partition_reassignments,
    codec.ListPartitionReassignmentsRequest: handle_list_partition_reassignments,
    codec.ReassignmentCompletedRequest: handle_reassignment_completed,
    codec.RebalanceRequest: handle_rebalance,
    codec.AlterUserScramCredentialsRequest: handle_alter_user_scram_credentials,
    codec.DescribeUserScramCredentialsRequest: handle_describe_user_scram_credentials,
    codec.CreateAclsRequest: handle_create_acls,
    codec.DescribeAclsRequest: handle_describe_acls,
    codec.DeleteAclsRequest: handle_delete_acls,
    codec.AlterClientQuotasRequest: handle_alter_client_quotas,
    codec.DescribeClientQuotasRequest: handle_describe_client_quotas,
}


def handlers_for(listener: str) -> dict[type[Any], Handler]:
    """Every handler for requests that arrived on `listener` (`LISTENER_HANDLERS` bound to it)."""
    bound = {kind: partial(call, listener=listener) for kind, call in LISTENER_HANDLERS.items()}
    return {**HANDLERS, **bound}


__all__ = [
    "HANDLERS",
    "LISTENER_HANDLERS",
    "BrokerContext",
    "Deferred",
    "Handler",
    "NullMetrics",
    "PartitionState",
    "handlers_for",
]
