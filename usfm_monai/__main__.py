from usfm_monai.apps.cli import main

main()
