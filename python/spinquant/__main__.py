from spinquant.cli import main

main()
