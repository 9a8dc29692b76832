"""What every app shares: config helpers, checkpoint I/O, callbacks, the base LightningModule."""
