package evloop

// Handler receives a descriptor's events, on the loop goroutine.
type Handler interface {
	Event(ev Events)
}

// Events is what epoll reported for a descriptor. An error or hang-up is
// reported as both Readable and Writable: the next read or write says what
// happened.
type Events uint8

const (
	// Readable: data to read, or an end of file or error to meet.
	Readable Events = 1 << iota
	// Writable: room in the send buffer, or an error to meet.
	Writable
	// PeerClosed: the peer sends nothing more. The end of file may sit
	// behind the data of the same event, which a read shorter than its
	// buffer would otherwise take as the end of what there is to read:
	// read until the end of file.
	PeerClosed
)

// Has reports whether e holds every event of x.
func (e Events) Has(x Events) bool { return e&x == x }
