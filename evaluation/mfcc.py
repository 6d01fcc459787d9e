"""Re-export: the MFCC lives in lightning_modules.nets.mfcc (stages use it; lightning_modules never imports
evaluation)."""
from lightning_modules.nets.mfcc import *  # noqa: F401,F403
