import ArgumentParser
MoEStream.main()
