build/lib/archive.o: lib/archive.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
