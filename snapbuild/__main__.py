from snapbuild.cli import main

main()
