"""`python -m richkd_deploy` is the same as the `richkd-deploy` command (torchrun uses it)."""

from richkd_deploy.cli import main

if __name__ == "__main__":
    main()
