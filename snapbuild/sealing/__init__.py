"""The sealing policy: seal, check, and the offline checker."""
