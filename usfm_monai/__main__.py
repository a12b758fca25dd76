from usfm_monai.cli import main

main()
