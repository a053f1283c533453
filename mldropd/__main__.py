"""python -m mldropd"""

from mldropd.cli import main

main()
