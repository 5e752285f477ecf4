"""Suite-wide settings: no test may reach the network (hub weights come from the cache or fail)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
