build/lib/error.o: lib/error.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
