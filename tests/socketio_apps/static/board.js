// served as a static file by tests/socketio_apps/board.py: the test reads it back
console.log("board");
