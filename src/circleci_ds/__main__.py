from circleci_ds.cli import main

main()
