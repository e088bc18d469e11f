"""The model: its card, its runtime, the predictor, Grad-CAM, and the TensorFlow-free trust maths."""
