from hubdeploy.cli import main

main()
