"""What a sweep runs, before anything is stored: a spec read, checked and expanded into trials
whose command lines the scripts' own parsers accept (the lowest layer of utils.sweep)."""
