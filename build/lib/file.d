build/lib/file.o: lib/file.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
