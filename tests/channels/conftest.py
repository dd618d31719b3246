import sys
from pathlib import Path

# the leave-one-out helper is imported by its module name in the slow tests
sys.path.insert(0, str(Path(__file__).parent))
