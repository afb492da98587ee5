from searchsvc.cli.main import main

if __name__ == "__main__":  # not when a worker process (spawn, forkserver) imports the main module as __mp_main__
    raise SystemExit(main())
