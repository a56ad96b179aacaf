from esr_lab.cli import main

main()
