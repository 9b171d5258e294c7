"""Stage 2: the training-ready dataset (process), THE preprocessing function every stage uses, the photo renderer."""
