//go:build race

package edge

// raceEnabled shrinks the tests that move a lot of data, which the race
// detector slows down tenfold.
const raceEnabled = true
