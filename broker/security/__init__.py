"""The broker's security: transport, authorization and quotas (docs/security.md).

Transport: `listeners` (named listeners, the connection's transport principal), `tls` (server
and peer TLS contexts). Authorization and quotas, pure cores: `acl` (bindings, index, authorizer),
`quota` (entities, token buckets), `rules` (what each API needs), `state` (the replicated ACLs and
quotas); shells: `gate` (the per-request hook in the server), `store` (a single node's LMDB
persistence). Authentication (SASL SCRAM) is `broker/auth/`.
"""
