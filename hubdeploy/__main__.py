from hubdeploy.cli.main import main

main()
