"""The plot stage: figures from evaluate's predictions and train's curves."""
