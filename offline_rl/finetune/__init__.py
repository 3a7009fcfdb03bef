"""Online fine-tuning after the offline phase, one module per scheme."""
