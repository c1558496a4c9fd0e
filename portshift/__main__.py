from portshift.cli import main

main()
