-- The unexpired entries: {id, info, id, info, ...}.
return live()
