"""Authorization (ACLs) and client quotas (docs/security.md).

Pure cores: `acl` (bindings, index, authorizer), `quota` (entities, token buckets), `rules` (what
each API needs), `state` (the replicated ACLs and quotas). Shell: `gate` (the per-request hook in
the server), `store` (a single node's LMDB persistence).
"""
