build/lib/util.o: lib/util.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
