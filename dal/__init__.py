"""dal: synthetic images + deep active learning for industrial object detection."""
