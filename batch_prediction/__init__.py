"""Stage 5: the nightly job that scores every new photo under ``incoming/`` exactly once per champion."""
