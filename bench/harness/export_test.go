package harness

// ProgramPackages are the packages of the programs a run needs, for the
// external tests that build them.
func ProgramPackages() []string {
	var pkgs []string
	for _, p := range programs() {
		pkgs = append(pkgs, p.pkg)
	}
	return pkgs
}
