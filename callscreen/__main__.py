from callscreen.cli import main

main()
