"""LeNet-5 and its swappable parts."""
