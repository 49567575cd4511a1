"""The Run layer: one build's context, undo, ledger touches and monitor."""
