from gradaudit.distributed.command import main

main()
