from lossctl.cli import main

main()
