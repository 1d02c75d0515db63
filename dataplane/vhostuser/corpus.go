package vhostuser

// The fuzz targets' seed corpus in testdata/fuzz is generated from the
// seeds in fuzz_test.go; TestFuzzCorpus checks it matches.
//go:generate go test -count=1 -run ^TestFuzzCorpus$ . -update-corpus
