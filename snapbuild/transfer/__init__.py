"""Moving big files for air-gapped operators: `fetch-base` (resumable, parallel, verified HTTP download of a
base cloud image) and `ship` (rsync over an SSH ProxyJump chain of relays, resumed and verified)."""
